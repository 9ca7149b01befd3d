"""Configuration and errors: the configs with their defaults and checks, the error types, progress and
cancellation, the memory budget and the bundled files' paths. Imports nothing else of the package."""
