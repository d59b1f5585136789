// Command vcsim-lite serves govmomi's vSphere simulator (ESX or vCenter model) on one address,
// prints its URL on the first line of stdout, and runs until it is killed.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	mode := flag.String("mode", "esx", "esx or vpx")
	listen := flag.String("listen", "127.0.0.1:0", "host:port to serve on")
	vms := flag.Int("vm", 2, "VMs per host (esx) or per resource pool (vpx)")
	user := flag.String("user", "", "the only user accepted (any when empty)")
	password := flag.String("password", "", "that user's password")
	flag.Parse()
	model := simulator.ESX()
	if *mode == "vpx" {
		model = simulator.VPX()
	}
	model.Machine = *vms
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	model.Service.Listen = &url.URL{Host: *listen}
	if *user != "" {
		model.Service.Listen.User = url.UserPassword(*user, *password)
	}
	model.Service.TLS = new(tls.Config)
	server := model.Service.NewServer()
	fmt.Println(server.URL.String())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	server.Close()
	model.Remove()
}
