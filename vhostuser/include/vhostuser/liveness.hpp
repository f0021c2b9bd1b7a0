#pragma once
// Guards asio completion handlers against outliving the object they work on.
//
// Cancelling or destroying an I/O object stops only operations that have not completed yet:
// a timer that already expired, or a descriptor that already became ready, has its handler
// queued on the executor, and that handler still runs, with success, after the cancel. Any
// handler that captures a pointer to a short-lived object (a connection, a handshake) must
// therefore check that the object still lives. Devices run on the server's executor, one
// thread, so a weak reference checked at the start of the handler is enough.
#include <memory>
#include <utility>

namespace vhostuser {

class Liveness {
 public:
  Liveness() = default;
  // The token belongs to one object: a copy or a move would make handlers of the old
  // object run on the new one.
  Liveness(const Liveness&) = delete;
  Liveness& operator=(const Liveness&) = delete;

  /// `f`, called with the handler's arguments only while this Liveness (its owner) exists.
  template <class F>
  [[nodiscard]] auto guard(F f) const {
    return [alive = std::weak_ptr<const int>(token_), f = std::move(f)](auto&&... args) mutable {
      if (!alive.expired()) f(std::forward<decltype(args)>(args)...);
    };
  }

 private:
  std::shared_ptr<const int> token_ = std::make_shared<const int>(0);
};

}  // namespace vhostuser
