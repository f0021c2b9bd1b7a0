# Unit and property tests, one executable per layer.
include(${CMAKE_CURRENT_SOURCE_DIR}/unit/virtio/tests.cmake OPTIONAL)
include(${CMAKE_CURRENT_SOURCE_DIR}/unit/vhostuser/tests.cmake)
