// The virtio error category: every enumerator has its own readable message.
#include "virtio/errors.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace virtio {
namespace {

constexpr Errc last_errc = Errc::short_chain;  // the last enumerator of errors.hpp

TEST(Errors, EveryCodeHasItsOwnMessage) {
  std::set<std::string> messages;
  for (int e = 1; e <= static_cast<int>(last_errc); ++e) {
    const boost::system::error_code code = static_cast<Errc>(e);
    EXPECT_STREQ(code.category().name(), "virtio");
    EXPECT_NE(code.message(), "unknown virtio error") << e;
    EXPECT_TRUE(messages.insert(code.message()).second) << "duplicate message for " << e;
  }
  EXPECT_EQ(boost::system::error_code(static_cast<Errc>(static_cast<int>(last_errc) + 1)).message(),
            "unknown virtio error");
}

TEST(Errors, ResultsCompareAgainstTheEnum) {
  const Result<int> failed = Errc::short_chain;
  EXPECT_EQ(failed.error(), Errc::short_chain);
  EXPECT_NE(failed.error(), Errc::unmapped_address);
}

}  // namespace
}  // namespace virtio
