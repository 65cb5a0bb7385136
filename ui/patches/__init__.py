"""Runtime patches of Chainlit, each in a module of its own that names the function and version it changes."""
