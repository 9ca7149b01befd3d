"""Results: a reconstruction, a set of structures (one structure is a set of one), and their folders."""
