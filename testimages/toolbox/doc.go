// Command toolbox is the program inside Flotilla's test image: one static
// multi-call binary whose first argument picks what it does (serve HTTP,
// exit with a code, sleep, allocate memory, print its environment, ...),
// so every end-to-end test can use the same small image. It uses the
// standard library only, so the image needs nothing else.
package main
