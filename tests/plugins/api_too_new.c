/* An execution-provider plugin built for a newer ONNX Runtime than the one loading it: it asks
 * for an API version the runtime does not have and, as plugins do, refuses to create its
 * factories with an error status. Compiled by tests/plugin_eps.rs. Declares only the two
 * entries of ONNX Runtime's C API it uses (OrtApiBase, and CreateStatus, the first member of
 * OrtApi). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct OrtStatus OrtStatus;
typedef struct OrtApi {
  OrtStatus *(*CreateStatus)(int code, const char *msg);
} OrtApi;
typedef struct OrtApiBase {
  const OrtApi *(*GetApi)(uint32_t version);
  const char *(*GetVersionString)(void);
} OrtApiBase;

#define BUILT_FOR_API 99

OrtStatus *CreateEpFactories(const char *name, const OrtApiBase *base, const void *logger, void **factories,
                             size_t max_factories, size_t *num_factories) {
  (void)name; (void)logger; (void)factories; (void)max_factories;
  *num_factories = 0;
  if (base->GetApi(BUILT_FOR_API) != NULL) return NULL;
  static char msg[200];
  snprintf(msg, sizeof msg, "this plugin needs ONNX Runtime API version %d; the runtime is %s", BUILT_FOR_API,
           base->GetVersionString());
  return base->GetApi(1)->CreateStatus(1 /* ORT_FAIL */, msg);
}

OrtStatus *ReleaseEpFactory(void *factory) {
  (void)factory;
  return NULL;
}
