#pragma once
// The libFuzzer entry point every target in this folder defines (and replay_main.cpp calls).
#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
