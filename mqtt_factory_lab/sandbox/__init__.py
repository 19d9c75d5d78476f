"""The sandbox: the whole factory on one machine, started and stopped by one command.

``mqtt-lab sandbox up`` starts, in order and each once the previous one is ready, a broker
(the ``docker/`` configuration on port 1884), the Virtual Factory (``python -m sim.run_all``:
devices, controller, observer), the chocolate line's data center, the chocolate line and
the dashboard on port 8080. Every program runs detached, in a process group of its own,
and is written down in a state folder (``~/.local/state/mqtt-factory-lab/sandbox``): its
pid with the process's start time, its command and its log. ``down`` reads that folder
and stops exactly those processes, even after ``up`` itself was killed; ``fault`` injects
the seed's failure scenarios into the running sandbox.

One module, one job:

* :mod:`.state`      the state folder: what runs, with which pid, since when, logging where;
* :mod:`.processes`  starting a detached program, waiting for its ready line, ending it;
* :mod:`.ports`      whether a port is free, and who holds it if not;
* :mod:`.broker`     the sandbox's broker: local mosquitto or a Docker container;
* :mod:`.plan`       which programs, with which arguments, for the chosen options;
* :mod:`.lifecycle`  ``up``, ``down``, ``status``, ``logs``;
* :mod:`.faults`     the fault scenarios;
* :mod:`.command`    the ``mqtt-lab sandbox`` command line.

The package never imports :mod:`sim`: the factory's programs are started as processes,
the way a student's programs are.
"""
