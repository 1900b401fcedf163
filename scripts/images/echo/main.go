// echo: the test bed's HTTP echo server. Listens on $PORT (default 8080) and answers any
// request with JSON holding its pod name (HOSTNAME), its environment and the request
// headers, so tests can see which pod answered and what reached it. Logs one line at
// start-up and one per request to stdout, so `kubectl logs` has something to show.
// ECHO_EXIT=N makes it print one line and exit with code N at once (a crash loop on demand).
// ECHO_WRITE=PATH writes the pod name to PATH before listening and exits 1 when it cannot
// (where a volume really lives: a Ready pod has written its file).
// It speaks HTTP/1.1 and unencrypted HTTP/2 (h2c, prior knowledge) on the same port, so a
// Gateway's gRPC backends (appProtocol kubernetes.io/h2c) reach it too; `proto` says which.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
)

type reply struct {
	Hostname string            `json:"hostname"`
	Method   string            `json:"method"`
	Proto    string            `json:"proto"`
	Path     string            `json:"path"`
	Headers  map[string]string `json:"headers"`
	Env      map[string]string `json:"env"`
}

func main() {
	if code := os.Getenv("ECHO_EXIT"); code != "" {
		n, _ := strconv.Atoi(code)
		fmt.Printf("echo: exiting with code %d as asked\n", n)
		os.Exit(n)
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	hostname, _ := os.Hostname()
	if h := os.Getenv("HOSTNAME"); h != "" {
		hostname = h
	}
	if path := os.Getenv("ECHO_WRITE"); path != "" {
		if err := os.WriteFile(path, []byte(hostname+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		fmt.Printf("echo: wrote %s\n", path)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		headers := map[string]string{"Host": r.Host}
		for k, v := range r.Header {
			headers[k] = strings.Join(v, ", ")
		}
		env := map[string]string{}
		for _, kv := range os.Environ() {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		fmt.Printf("echo: %s %s from %s\n", r.Method, r.URL.Path, r.RemoteAddr)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(reply{hostname, r.Method, r.Proto, r.URL.Path, headers, env})
	})
	fmt.Printf("echo: %s listening on :%s\n", hostname, port)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	server := &http.Server{Addr: ":" + port, Protocols: &protocols}
	if err := server.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}
