{
  "targets": [
    {
      "target_name": "devlease",
      "sources": [
        "native/addon.cc",
        "native/close.cc",
        "native/common.cc",
        "native/constants.cc",
        "native/env_fds.cc",
        "native/eventfd.cc",
        "native/fd_ops.cc",
        "native/futex.cc",
        "native/inotify.cc",
        "native/mapping.cc",
        "native/memfd.cc",
        "native/peer.cc",
        "native/pidfd.cc",
        "native/poll.cc",
        "native/poll_shared.cc",
        "native/unix_socket.cc",
        "native/sigbus_guard.cc",
        "native/wait_set.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=9", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++20", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "ldflags": ["-Wl,-z,nodelete"],
      "conditions": [["OS!='linux'", {"type": "none"}]]
    }
  ]
}
