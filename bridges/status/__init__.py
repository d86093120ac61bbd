"""The status page: ``/`` of the control-plane port (see ``bridges.status.routes``)."""
