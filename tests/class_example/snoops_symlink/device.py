print("never started")
