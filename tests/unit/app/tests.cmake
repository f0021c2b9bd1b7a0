vsockd_unit_test(app_tests
  SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/config_keys_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/config_command_line_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/config_yaml_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/config_validate_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/vsockd_process_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/vsockd_control_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/control_protocol_test.cpp
    ${CMAKE_CURRENT_LIST_DIR}/vm_report_test.cpp
  LIBS vsockd_config vsockd_daemon fmt::fmt)
# The process tests run the real daemon: build it first and tell them where it is.
# The docs test reads docs/usage.md from the source tree.
target_compile_definitions(app_tests PRIVATE VSOCKD_BINARY="$<TARGET_FILE:vhost-vsockd>"
                                             VSOCKD_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
add_dependencies(app_tests vhost-vsockd)
