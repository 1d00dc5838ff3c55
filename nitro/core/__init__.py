"""The core of the server: events and bus, router, sessions registry and delivery, the module API."""
