#pragma once
// The tape of one forward pass: each op that needs a backward pushes a closure over the
// activations it saved, and backward() replays them newest first. Models stay in charge of
// their own buffers; the tape only fixes the order.
#include <functional>
#include <utility>
#include <vector>

namespace tessera::autograd {

class Tape {
 public:
  void push(std::function<void()> backward) { steps_.push_back(std::move(backward)); }
  size_t size() const { return steps_.size(); }

  // Runs every recorded backward step in reverse order, then forgets them.
  void backward() {
    for (auto it = steps_.rbegin(); it != steps_.rend(); ++it) (*it)();
    steps_.clear();
  }
  void clear() { steps_.clear(); }

 private:
  std::vector<std::function<void()>> steps_;
};

}  // namespace tessera::autograd
