#include <atomic>
#include <csignal>
#include <memory>
#include <thread>

#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "server/api_server.h"

namespace tessera::cli {

void register_serve(CLI::App& app) {
  struct Options {
    std::string config;
    std::string host;
    int port = -1;
    int threads = -1;
    std::string data_dir;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("serve", "Serve the OpenAI-compatible API (chat, completions, images) over HTTP");
  cmd->add_option("-c,--config", opts->config, "serve.yaml naming the endpoints (default: the installed models)");
  cmd->add_option("--host", opts->host, "Address to listen on (default 127.0.0.1)");
  cmd->add_option("-p,--port", opts->port, "Port (default 8080; 0: any free port)")->check(CLI::Range(0, 65535));
  cmd->add_option("-t,--threads", opts->threads, "Compute threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--data-dir", opts->data_dir, "Where tokens, usage and image files live (default: $TESSERA_DATA or ~/.local/share/tessera)");
  cmd->callback([opts] {
    server::ServerConfig config = opts->config.empty() ? server::ServerConfig::defaults() : server::ServerConfig::load(opts->config);
    if (!opts->host.empty()) config.host = opts->host;
    if (opts->port >= 0) config.port = opts->port;
    if (opts->threads >= 0) config.threads = opts->threads;
    if (!opts->data_dir.empty()) config.data_dir = opts->data_dir;

    // Signals go to one waiting thread rather than interrupting whichever thread runs.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    server::ApiServer server(config, [](const std::string& line) { fmt::print(stderr, "{}\n", line); });
    std::thread waiter([&] {
      int sig = 0;
      sigwait(&signals, &sig);
      if (sig == SIGINT || sig == SIGTERM) {
        fmt::print(stderr, "shutting down\n");
        server.stop();
      }
    });
    std::atomic<bool> finished{false};
    std::thread announce([&] {
      while (!finished && server.port() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (server.port() == 0) return;
      std::string names;
      for (const auto& e : config.endpoints) names += fmt::format("\n  {} ({}: {})", e.name, server::kind_name(e.kind), e.model);
      fmt::print(stderr, "tessera serving on http://{}:{}/v1 (also /serving-endpoints){}\n", config.host, server.port(), names);
    });
    try {
      server.run();
    } catch (...) {
      finished = true;
      pthread_kill(waiter.native_handle(), SIGTERM);
      waiter.join();
      announce.join();
      throw;
    }
    finished = true;
    pthread_kill(waiter.native_handle(), SIGTERM);
    waiter.join();
    announce.join();
  });
}

}  // namespace tessera::cli
