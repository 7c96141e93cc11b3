"""bench/train_throughput.py's parts. Importing the package imports nothing else: the TRL child
(`throughput.trl_child`) must run without sftlab loaded."""
