# virtio layer: guest memory, ring layout, descriptor chains, chain streams, the split queue.
vsockd_unit_test(virtio_tests
  SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/errors_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/guest_memory_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/ring_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/descriptor_chain_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/chain_io_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/split_queue_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/notification_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/chain_io_properties_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/split_queue_properties_test.cpp
  LIBS virtio)
