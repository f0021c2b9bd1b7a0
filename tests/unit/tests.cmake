# Unit and property tests, one executable per layer.
include(${CMAKE_CURRENT_SOURCE_DIR}/unit/virtio/tests.cmake)
include(${CMAKE_CURRENT_SOURCE_DIR}/unit/vhostuser/tests.cmake)
include(${CMAKE_CURRENT_SOURCE_DIR}/unit/vsock/tests.cmake)
include(${CMAKE_CURRENT_SOURCE_DIR}/unit/app/tests.cmake)
