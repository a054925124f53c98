// Command kas-standin stands in for a hosted cluster's kube-apiserver in the cluster tests:
// a TLS server that, on each connection, writes "backend=<POD_NAME> sni=<server name>\n"
// and then echoes what it receives, as the tests' own TlsBackend does
// (tests/common/backends.rs). On SIGTERM it stops accepting and lets open connections
// finish for up to -drain, as a kube-apiserver does on shutdown. Static, so its image is
// this file alone.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", ":6443", "address to listen on")
	certFile := flag.String("cert", "/tls/tls.crt", "serving certificate (PEM)")
	keyFile := flag.String("key", "/tls/tls.key", "its key (PEM)")
	drain := flag.Duration("drain", 30*time.Second, "how long open connections may go on after SIGTERM")
	flag.Parse()

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("load %s and %s: %v", *certFile, *keyFile, err)
	}
	id := os.Getenv("POD_NAME")
	if id == "" {
		id, _ = os.Hostname()
	}
	ln, err := tls.Listen("tcp", *listen, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		log.Fatalf("listen on %s: %v", *listen, err)
	}
	log.Printf("%s listening on %s", id, ln.Addr())

	var open sync.WaitGroup
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		log.Printf("SIGTERM: no new connections; open ones get %s", *drain)
		ln.Close()
	}()

	for {
		conn, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			break
		}
		if err != nil {
			log.Printf("accept: %v", err)
			continue
		}
		open.Add(1)
		go func() {
			defer open.Done()
			serve(conn.(*tls.Conn), id)
		}()
	}

	done := make(chan struct{})
	go func() { open.Wait(); close(done) }()
	select {
	case <-done:
		log.Printf("every connection ended")
	case <-time.After(*drain):
		log.Printf("drain time over; closing what is open")
	}
}

func serve(conn *tls.Conn, id string) {
	defer conn.Close()
	if err := conn.Handshake(); err != nil {
		return
	}
	sni := conn.ConnectionState().ServerName
	if sni == "" {
		sni = "-"
	}
	if _, err := fmt.Fprintf(conn, "backend=%s sni=%s\n", id, sni); err != nil {
		return
	}
	_, _ = io.Copy(conn, conn)
}
