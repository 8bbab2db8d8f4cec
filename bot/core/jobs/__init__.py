"""Running jobs (generations) in this process: see worker.py for how the parts fit together."""
