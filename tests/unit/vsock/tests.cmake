vsockd_unit_test(vsock_tests
  SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/connect_parser_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/credit_properties.cpp
    ${CMAKE_CURRENT_LIST_DIR}/connection_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/connection_model_properties.cpp
    ${CMAKE_CURRENT_LIST_DIR}/router_test.cpp
  LIBS vsock)
target_include_directories(vsock_tests PRIVATE ${CMAKE_CURRENT_LIST_DIR}/../virtio)
