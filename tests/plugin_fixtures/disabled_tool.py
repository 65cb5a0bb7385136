raise RuntimeError("a disabled plugin was loaded")
