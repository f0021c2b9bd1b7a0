#pragma once
// ASSERT_OK / EXPECT_OK: a vusim::Result holds a value, or the test shows the Failure.
#include <gtest/gtest.h>

#define ASSERT_OK(expr)                                  \
  do {                                                   \
    const auto& vusim_result_ = (expr);                  \
    ASSERT_TRUE(vusim_result_) << vusim_result_.error(); \
  } while (0)

#define EXPECT_OK(expr)                                  \
  do {                                                   \
    const auto& vusim_result_ = (expr);                  \
    EXPECT_TRUE(vusim_result_) << vusim_result_.error(); \
  } while (0)
