"""A module named like the lab's: if the lab imported it, nothing would work."""

raise ImportError("the grader imported a submission's module named like the lab's")
