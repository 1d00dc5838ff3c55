"""Built-in IM feature modules: each is a short file of registrations with a `load(module)` function."""
