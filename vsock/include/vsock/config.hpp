#pragma once
// What one VM's vsock device is configured with.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <set>
#include <string>

namespace vsock {

struct DeviceConfig {
  /// The guest's CID, reported in the config space (spec 5.10.4).
  std::uint64_t guest_cid = 3;
  /// Host side: applications connect here ("CONNECT <port>\n"); guest connections to host
  /// port P go to "<uds_path>_<P>"; host-initiated SEQPACKET uses "<uds_path>_seqpacket".
  std::filesystem::path uds_path;
  /// Per connection: the guest -> host buffer, advertised to the guest as buf_alloc.
  std::uint32_t tx_buffer_size = 64 * 1024;
  /// Largest virtqueue size accepted from the front-end (QEMU uses 128).
  std::uint16_t queue_size = 1024;
  /// A host-initiated connection waits this long for the guest's RESPONSE after its REQUEST
  /// reached the guest, and a host client this long to finish its CONNECT line.
  std::chrono::milliseconds connect_timeout{2000};
  /// After the guest closed its end, the daemon waits this long to flush what it still holds
  /// for the host before it resets the connection.
  std::chrono::milliseconds shutdown_timeout{2000};
  /// A host client that connected before the guest driver was ready waits at most this long
  /// for its REQUEST to reach the guest.
  std::chrono::milliseconds guest_ready_timeout{30000};
  /// Connections at once; beyond, a new connection gets RST (guest) or is closed (host).
  std::uint32_t max_connections = 1024;
  /// Bytes all connections of the VM may hold in buffers at once; every connection reserves
  /// its tx buffer size from it.
  std::uint64_t max_buffered_bytes = 64ull << 20;
  /// Sibling groups: this VM reaches another VM's CID exactly when their groups intersect
  /// (and both are attached to the same Router).
  std::set<std::string, std::less<>> groups{"default"};
};

}  // namespace vsock
