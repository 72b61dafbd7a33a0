"""The parts of the etcd coordinator (adapters/etcd_coordinator.py): the key
layout, the claim queues behind locks and elections, and the recorder."""
