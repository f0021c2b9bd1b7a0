// ChainReader / ChainWriter: byte streams across descriptors and memory regions.
#include "virtio/chain_io.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <numeric>
#include <vector>

#include "driver_ring.hpp"

namespace virtio {
namespace {

using test::BufferSpec;
using test::DriverRing;
using test::GuestRam;
using test::RingLayout;

/// A wire struct as a device would read it (cf. the 44-byte vsock header).
struct Header {
  Le64 src;
  Le32 len;
  Le16 op;
  Le16 flags;
};
static_assert(sizeof(Header) == 16);

std::vector<std::byte> pattern(std::size_t n, unsigned seed = 1) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 7 + seed) & 0xff);
  return v;
}

class ChainIoTest : public ::testing::Test {
 protected:
  static constexpr std::uint64_t r1 = 0x10000;  // region 1 touches region 0 here
  static constexpr std::uint64_t data = 0x8000;
  static constexpr std::uint16_t q = 16;

  GuestRam ram{{{0x0, 0x10000}, {r1, 0x1000}}};
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};

  DescriptorChain chain(std::span<const BufferSpec> buffers) {
    ring.write_chain(0, buffers);
    auto c = DescriptorChain::walk(ram.memory(), ring.layout().desc, 0, ChainRules{q, true, 2000});
    if (!c) throw std::logic_error(c.error().message());
    return std::move(*c);
  }
};

TEST_F(ChainIoTest, ReadsObjectSplitAcrossDescriptors) {
  Header h;
  h.src = 0x1122334455667788;
  h.len = 5;
  h.op = 1;
  h.flags = 3;
  std::array<std::byte, 21> wire;
  std::memcpy(wire.data(), &h, sizeof h);
  std::memcpy(wire.data() + 16, "hello", 5);
  ram.write(GuestPhysAddr{data}, std::span(wire).first(5));
  ram.write(GuestPhysAddr{data + 0x100}, std::span(wire).subspan(5));

  const std::vector<BufferSpec> buffers{{GuestPhysAddr{data}, 5}, {GuestPhysAddr{data + 0x100}, 16}};
  const auto c = chain(buffers);
  ChainReader reader(c);
  EXPECT_EQ(reader.remaining(), 21U);
  auto got = reader.read_obj<Header>();
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(got->src.value(), 0x1122334455667788U);
  EXPECT_EQ(got->len.value(), 5U);
  EXPECT_EQ(got->op.value(), 1U);
  EXPECT_EQ(got->flags.value(), 3U);
  std::array<std::byte, 5> payload;
  ASSERT_TRUE(reader.read(payload));
  EXPECT_EQ(std::memcmp(payload.data(), "hello", 5), 0);
  EXPECT_EQ(reader.remaining(), 0U);
  EXPECT_EQ(reader.bytes_read(), 21U);
}

TEST_F(ChainIoTest, ReadPastEndIsShortAndConsumesNothing) {
  const std::vector<BufferSpec> buffers{{GuestPhysAddr{data}, 10}};
  const auto c = chain(buffers);
  ChainReader reader(c);
  EXPECT_EQ(reader.read_obj<Header>().error(), Errc::short_chain);
  EXPECT_EQ(reader.remaining(), 10U);
  EXPECT_EQ(reader.skip(11).error(), Errc::short_chain);
  EXPECT_TRUE(reader.skip(10));
  EXPECT_EQ(reader.read_obj<std::uint8_t>().error(), Errc::short_chain);
}

TEST_F(ChainIoTest, SkipMovesAcrossDescriptors) {
  ram.write(GuestPhysAddr{data}, pattern(30));
  const std::vector<BufferSpec> buffers{
      {GuestPhysAddr{data}, 10}, {GuestPhysAddr{data + 10}, 10}, {GuestPhysAddr{data + 20}, 10}};
  const auto c = chain(buffers);
  ChainReader reader(c);
  ASSERT_TRUE(reader.skip(15));
  std::array<std::byte, 10> got;
  ASSERT_TRUE(reader.read(got));
  EXPECT_EQ(std::memcmp(got.data(), pattern(30).data() + 15, 10), 0);
  EXPECT_EQ(reader.remaining(), 5U);
}

TEST_F(ChainIoTest, ReaderAndWriterSplitTheChain) {
  const std::vector<BufferSpec> buffers{{GuestPhysAddr{data}, 44, false},
                                        {GuestPhysAddr{data + 0x100}, 100, true},
                                        {GuestPhysAddr{data + 0x200}, 28, true}};
  const auto c = chain(buffers);
  EXPECT_EQ(ChainReader(c).remaining(), 44U);
  EXPECT_EQ(ChainWriter(c).remaining(), 128U);
}

TEST_F(ChainIoTest, WriterCrossesDescriptorsAndRegions) {
  const std::vector<BufferSpec> buffers{{GuestPhysAddr{data}, 3, true},
                                        {GuestPhysAddr{r1 - 5}, 10, true},
                                        {GuestPhysAddr{data + 0x100}, 100, true}};
  const auto c = chain(buffers);
  ChainWriter writer(c);
  const auto bytes = pattern(20);
  ASSERT_TRUE(writer.write(bytes));
  EXPECT_EQ(writer.bytes_written(), 20U);
  EXPECT_EQ(writer.remaining(), 93U);
  std::vector<std::byte> back = ram.read(GuestPhysAddr{data}, 3);
  const auto mid = ram.read(GuestPhysAddr{r1 - 5}, 10);
  const auto tail = ram.read(GuestPhysAddr{data + 0x100}, 7);
  back.insert(back.end(), mid.begin(), mid.end());
  back.insert(back.end(), tail.begin(), tail.end());
  EXPECT_EQ(back, bytes);
}

TEST_F(ChainIoTest, WriteTooLongStoresNothing) {
  const std::vector<BufferSpec> buffers{{GuestPhysAddr{data}, 4, true},
                                        {GuestPhysAddr{data + 0x10}, 4, true}};
  const auto c = chain(buffers);
  ChainWriter writer(c);
  EXPECT_EQ(writer.write(pattern(9)).error(), Errc::short_chain);
  EXPECT_EQ(writer.bytes_written(), 0U);
  EXPECT_EQ(ram.read(GuestPhysAddr{data}, 4), std::vector<std::byte>(4));
  Header h{};
  EXPECT_EQ(writer.write_obj(h).error(), Errc::short_chain);
  ASSERT_TRUE(writer.write_obj(std::uint64_t{0x0807060504030201}));
  EXPECT_EQ(ram.read(GuestPhysAddr{data + 0x10}, 4),
            (std::vector<std::byte>{std::byte{5}, std::byte{6}, std::byte{7}, std::byte{8}}));
}

TEST_F(ChainIoTest, ZeroLengthBuffersAreTransparent) {
  ram.write(GuestPhysAddr{data}, pattern(8));
  const std::vector<BufferSpec> buffers{{GuestPhysAddr{0xdead0000}, 0},
                                        {GuestPhysAddr{data}, 4},
                                        {GuestPhysAddr{data}, 0},
                                        {GuestPhysAddr{data + 4}, 4},
                                        {GuestPhysAddr{data}, 0}};
  const auto c = chain(buffers);
  ChainReader reader(c);
  std::array<std::byte, 8> got;
  ASSERT_TRUE(reader.read(got));
  EXPECT_EQ(std::memcmp(got.data(), pattern(8).data(), 8), 0);
  EXPECT_EQ(reader.remaining(), 0U);
}

TEST_F(ChainIoTest, PeekIovecsSplitsAtRegionBoundariesAndHonoursMaxBytes) {
  const std::vector<BufferSpec> buffers{{GuestPhysAddr{r1 - 4}, 8}, {GuestPhysAddr{data}, 100}};
  const auto c = chain(buffers);
  ChainReader reader(c);
  boost::container::small_vector<iovec, 4> iov;
  auto covered = reader.peek_iovecs(50, iov);
  ASSERT_TRUE(covered);
  EXPECT_EQ(*covered, 50U);
  ASSERT_EQ(iov.size(), 3U);
  EXPECT_EQ(iov[0].iov_len, 4U);
  EXPECT_EQ(iov[1].iov_len, 4U);
  EXPECT_EQ(iov[2].iov_len, 42U);
  EXPECT_EQ(static_cast<std::byte*>(iov[2].iov_base), ram.memory()->span(GuestPhysAddr{data}, 1)->data());
  EXPECT_EQ(reader.remaining(), 108U);  // peeking does not consume

  ASSERT_TRUE(reader.skip(6));
  covered = reader.peek_iovecs(1000, iov);
  ASSERT_TRUE(covered);
  EXPECT_EQ(*covered, 102U);
  ASSERT_EQ(iov.size(), 2U);
  EXPECT_EQ(iov[0].iov_len, 2U);
  EXPECT_EQ(iov[1].iov_len, 100U);
}

TEST_F(ChainIoTest, IovecsMoveBytesThroughASyscallWithoutCopies) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const auto bytes = pattern(300, 3);
  ram.write(GuestPhysAddr{data}, std::span(bytes).first(100));
  ram.write(GuestPhysAddr{r1 - 50}, std::span(bytes).subspan(100));

  // Guest -> socket: writev straight from the readable buffers.
  const std::vector<BufferSpec> out{{GuestPhysAddr{data}, 100, false},
                                    {GuestPhysAddr{r1 - 50}, 200, false},
                                    {GuestPhysAddr{data + 0x1000}, 300, true},
                                    {GuestPhysAddr{r1 + 0x100}, 10, true}};
  const auto c = chain(out);
  ChainReader reader(c);
  boost::container::small_vector<iovec, 8> iov;
  ASSERT_EQ(*reader.peek_iovecs(reader.remaining(), iov), 300U);
  ASSERT_EQ(::writev(fds[1], iov.data(), static_cast<int>(iov.size())), 300);
  ASSERT_TRUE(reader.skip(300));

  // Socket -> guest: readv straight into the writable buffers.
  ChainWriter writer(c);
  ASSERT_EQ(*writer.peek_iovecs(writer.remaining(), iov), 310U);
  ASSERT_EQ(::readv(fds[0], iov.data(), static_cast<int>(iov.size())), 300);
  ASSERT_TRUE(writer.commit(300));
  EXPECT_EQ(writer.bytes_written(), 300U);
  EXPECT_EQ(writer.commit(11).error(), Errc::short_chain);
  EXPECT_EQ(ram.read(GuestPhysAddr{data + 0x1000}, 300), bytes);
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_F(ChainIoTest, PeekIovecsStopsAtIovMax) {
  const std::vector<BufferSpec> bytes(max_iovecs + 50, BufferSpec{GuestPhysAddr{data}, 1, true});
  ring.write_indirect_chain(0, GuestPhysAddr{0x9000}, bytes);
  auto c = DescriptorChain::walk(ram.memory(), ring.layout().desc, 0, ChainRules{q, true, 2000});
  ASSERT_TRUE(c) << c.error().message();
  ChainWriter writer(*c);
  boost::container::small_vector<iovec, 8> iov;
  EXPECT_EQ(*writer.peek_iovecs(SIZE_MAX, iov), max_iovecs);
  EXPECT_EQ(iov.size(), max_iovecs);
}

TEST_F(ChainIoTest, UnmappedBuffersYieldErrorsNotCrashes) {
  // Only DescriptorChain::walk guarantees mapped buffers; an arbitrary list may not be.
  const auto memory = ram.memory();
  const std::vector<ChainBuffer> buffers{{GuestPhysAddr{data}, 4, false},
                                         {GuestPhysAddr{0x40000}, 4, false},
                                         {GuestPhysAddr{UINT64_MAX}, 4, false}};
  ChainReader reader(*memory, buffers);
  std::array<std::byte, 8> got;
  EXPECT_EQ(reader.read(got).error(), Errc::unmapped_address);
  EXPECT_EQ(reader.remaining(), 12U);
  boost::container::small_vector<iovec, 4> iov;
  EXPECT_EQ(reader.peek_iovecs(8, iov).error(), Errc::unmapped_address);
  ASSERT_TRUE(reader.skip(8));
  EXPECT_EQ(reader.read(std::span(got).first(4)).error(), Errc::address_overflow);

  ChainWriter writer(*memory, buffers);
  EXPECT_EQ(writer.write(pattern(8)).error(), Errc::unmapped_address);
  EXPECT_EQ(writer.bytes_written(), 0U);
}

}  // namespace
}  // namespace virtio
