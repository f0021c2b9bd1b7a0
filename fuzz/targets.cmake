# One line per fuzz target (see CMakeLists.txt beside this file).
vsockd_fuzz_target(virtqueue LIBS virtio)
vsockd_fuzz_target(session LIBS vhostuser)
vsockd_fuzz_target(vsock_device LIBS vsock)
vsockd_fuzz_target(control_request LIBS vsockd_control_protocol)
