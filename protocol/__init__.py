"""The shared vocabulary of lithos: wire messages, their codec, the config schemas.

Pure: this package performs no privileged calls, and the codec and the config
schemas do no I/O beyond reading the file they are handed.
"""
