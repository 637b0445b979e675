// Command iolane-registrar registers a CSI driver's socket with kubelet through kubelet's
// plugin registration (the `Registration` service of
// k8s.io/kubelet/pkg/apis/pluginregistration/v1, served on a socket in kubelet's
// plugins_registry directory), as node-driver-registrar does in deploy/base's DaemonSet.
// node-driver-registrar's module is not served by the Go module proxy these machines
// reach, so tests/k8s/kubelet.sh builds this stand-in: kubelet's side of the exchange
// (plugin watcher, GetInfo, NodeGetInfo on the driver, NotifyRegistrationStatus) is the
// real one.
//
//	iolane-registrar -driver csi.iolane.dev -endpoint /var/lib/kubelet/plugins/csi.iolane.dev/csi.sock \
//	    -registration-dir /var/lib/kubelet/plugins_registry
//
// It serves until SIGTERM/SIGINT, logs kubelet's registration status, and removes its
// socket on exit.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	driver, endpoint string
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	log.Printf("kubelet asked for plugin info: %s at %s", r.driver, r.endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.driver,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if s.PluginRegistered {
		log.Printf("kubelet registered %s", r.driver)
	} else {
		log.Printf("kubelet refused %s: %s", r.driver, s.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	driver := flag.String("driver", "csi.iolane.dev", "CSI driver name")
	endpoint := flag.String("endpoint", "", "the driver's socket path as kubelet sees it")
	dir := flag.String("registration-dir", "/var/lib/kubelet/plugins_registry", "kubelet's plugin registration directory")
	flag.Parse()
	if *endpoint == "" {
		log.Fatal("-endpoint is required")
	}
	sock := filepath.Join(*dir, *driver+"-reg.sock")
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatalf("listen on %s: %v", sock, err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registrar{driver: *driver, endpoint: *endpoint})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.Stop()
	}()
	log.Printf("serving registration of %s on %s", *driver, sock)
	if err := srv.Serve(lis); err != nil {
		log.Printf("serve: %v", err)
	}
	_ = os.Remove(sock)
}
