"""Past this machine: measure a config's step and the network (``calibrate``), predict step time, throughput
and time to a target for any node count and batch (``model``, ``plan``)."""
