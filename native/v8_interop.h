// The few places that need V8 directly (SharedArrayBuffer over foreign
// memory, reading a SharedArrayBuffer's backing store) convert between
// napi_value and v8::Local the way Node's own N-API implementation does:
// a napi_value *is* the address of a V8 handle slot.
#pragma once

#include <node_api.h>
#include <v8.h>

#include <cstring>

namespace devlease {

inline v8::Local<v8::Value> ToV8(napi_value value) {
  v8::Local<v8::Value> local;
  static_assert(sizeof(local) == sizeof(value));
  memcpy(static_cast<void*>(&local), &value, sizeof(value));
  return local;
}

inline napi_value ToNapi(v8::Local<v8::Value> local) { return reinterpret_cast<napi_value>(*local); }

}  // namespace devlease
