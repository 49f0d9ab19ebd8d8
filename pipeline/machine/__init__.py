"""The machine a stage runs on: devices and precision, several GPUs, and faults of the machine itself."""
