# Compile options every target of the project gets: strict warnings as errors, and the
# sanitizers when VSOCKD_SANITIZE is on. Third-party headers come in as SYSTEM includes
# through their imported targets, so -Werror only judges our own code.
add_library(vsockd_options INTERFACE)
target_compile_options(vsockd_options INTERFACE
  -Wall -Wextra -Wpedantic -Werror
  -Wshadow -Wold-style-cast -Wcast-align
  -Wimplicit-fallthrough -Woverloaded-virtual -Wmissing-declarations)
# GCC 12 at -O2 reports -Wmaybe-uninitialized inside libstdc++'s own std::function and
# std::regex (GCC bug 105562 and friends); as an error it would fail builds on headers we do
# not own. Every other warning stays an error.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  target_compile_options(vsockd_options INTERFACE -Wno-maybe-uninitialized)
endif()
# Asio pulls in its own deprecated-API shims only when asked; keep it header-only.
target_compile_definitions(vsockd_options INTERFACE
  BOOST_ASIO_NO_DEPRECATED BOOST_ASIO_NO_TS_EXECUTORS SPDLOG_FMT_EXTERNAL)

if(VSOCKD_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  target_compile_options(vsockd_options INTERFACE ${_san})
  target_link_options(vsockd_options INTERFACE ${_san})
endif()

if(VSOCKD_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "VSOCKD_FUZZ needs clang (configure with -DCMAKE_CXX_COMPILER=clang++-14)")
  endif()
  # Instrument all project code for coverage feedback; only fuzz executables link the driver.
  target_compile_options(vsockd_options INTERFACE -fsanitize=fuzzer-no-link,address,undefined)
  target_link_options(vsockd_options INTERFACE -fsanitize=address,undefined)
endif()
