// Command toolbox is the program inside Flotilla's test image: one static
// multi-call binary whose first argument picks what it does (serve HTTP,
// exit with a code, sleep, allocate memory, print its environment, ...),
// so every end-to-end test can use the same small image. It is static
// (CGO_ENABLED=0), so the image needs nothing else.
//
// Everything but `kube` uses the standard library only. `kube` is an
// in-cluster API client built on k8s.io/client-go (rest.InClusterConfig and
// the REST client over core/v1), so tests see what a real in-cluster
// program sees: ServiceAccount token, CA and KUBERNETES_SERVICE_* env, and
// the API's answers (RBAC refusals included). It deliberately avoids the
// full clientset, whose scheme of every API group would roughly quadruple
// the binary (about 6 MB without client-go, 14 MB with this, 30 MB
// with the clientset).
package main
