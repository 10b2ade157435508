"""`segment_anything_hq.utils`: `transforms` and `amg`, SAM's."""
