"""The box itself: a bootable Debian image with the agent, built reproducibly, and run under QEMU."""
