vsockd_unit_test(vhostuser_tests
  SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/codec_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/codec_properties.cpp
    ${CMAKE_CURRENT_LIST_DIR}/session_test.cpp
  LIBS vhostuser)
