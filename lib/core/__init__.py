"""The lowest layer: argument checks, locations, the atomic writer, pinned numerics, seeding.

Nothing here imports from the rest of the library."""
