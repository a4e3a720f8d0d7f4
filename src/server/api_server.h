#pragma once
// `tessera serve`: the OpenAI-compatible HTTP API over the configured endpoints.
//
// Routes (each under /v1 and /serving-endpoints): chat/completions, completions,
// images/generations, models; plus /serving-endpoints/{name}/invocations, /health, /metrics,
// /openapi.yaml and GET /api/2.0/usage, and the playground (web/) at / and /web/. Every route
// but /health, the playground's files (the page asks for a token and sends it) and image files
// (whose ids are unguessable capabilities like signed URLs) needs `Authorization: Bearer
// <token>`. Every answered request is metered (token, endpoint, tokens or images, latency, cost).
#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "server/metrics.h"
#include "server/server_config.h"

namespace tessera::server {

class ApiServer {
 public:
  // Loads every endpoint's model (and fails with one line if one cannot be loaded).
  ApiServer(ServerConfig config, std::function<void(const std::string&)> log = nullptr);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Binds (port 0: any free port) and serves until stop(); returns once stopped.
  void run();
  // Binds and serves on a background thread; returns the bound port.
  int start();
  void stop();
  int port() const { return port_.load(); }

  struct State;

 private:
  std::unique_ptr<State> state_;
  std::atomic<int> port_{0};
  std::thread thread_;
};

}  // namespace tessera::server
