#pragma once
// Addresses as distinct types.
//
// Descriptor addresses in a virtqueue are guest-physical (virtio spec 2.7.5, "addr" is a
// "guest physical address"); vhost-user ring addresses are the front-end's own virtual
// addresses. Each kind is its own instantiation of TypedAddress, so one cannot be passed where
// the other (or a host pointer, or a length) is expected; all arithmetic goes through checked
// helpers because every value that reaches these types comes from an untrusted peer.
#include <compare>
#include <cstdint>
#include <optional>

namespace virtio {

template <class Tag>
class TypedAddress {
 public:
  constexpr TypedAddress() = default;
  constexpr explicit TypedAddress(std::uint64_t value) : value_(value) {}

  [[nodiscard]] constexpr std::uint64_t raw() const { return value_; }

  /// The address `offset` bytes further on, or nothing if that wraps past 2^64.
  [[nodiscard]] constexpr std::optional<TypedAddress> checked_add(std::uint64_t offset) const {
    if (offset > UINT64_MAX - value_) return std::nullopt;
    return TypedAddress{value_ + offset};
  }

  /// Bytes from `base` up to this address; the caller guarantees base <= *this.
  [[nodiscard]] constexpr std::uint64_t offset_from(TypedAddress base) const { return value_ - base.value_; }

  friend constexpr auto operator<=>(TypedAddress, TypedAddress) = default;

 private:
  std::uint64_t value_ = 0;
};

/// A guest-physical address.
using GuestPhysAddr = TypedAddress<struct GuestPhysTag>;

}  // namespace virtio
