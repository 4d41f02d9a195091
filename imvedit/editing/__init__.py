"""The library behind `imvedit edit`: one file (`edit`), and batches of jobs over one loaded model (`batch`)."""
