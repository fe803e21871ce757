"""ZeroMQ streaming: protocol, handler, worker base class, launcher, clients, CURVE security."""
