"""The hypervisors b2dkit drives: ``base`` (states, MachineSpec, the Provider interface) and one
sub-package per hypervisor holding its program wrapper and its provider side by side."""
