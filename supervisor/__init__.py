"""The supervisor: spawns actors, watches them and applies the restart policy."""
