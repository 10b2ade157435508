"""`segment_anything.utils`: `transforms` and `amg`."""
