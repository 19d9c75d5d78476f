print("never run: the manifest is broken")
