"""usnetd on more than one core: the domain as N processes, each serving a share of the flows.

Python threads would not help: the data path is Python, and one interpreter runs one thread at a
time (docs/design-notes.md, "More than one core: usnetd --workers", has the measurement). So workers are
processes. `usnetd --workers N` (N > 1) opens every TAP netif with N queues (usnet.drivers.tap:
`TapDriver.queues`, IFF_MULTI_QUEUE) and every packet netif as N sockets in a PACKET_FANOUT group
(usnet.drivers.packet: `PacketDriver.queues`), both steered by local port (usnet.drivers.steer):
a frame to port p arrives on queue p mod N, ARP, ICMP and fragments on queue 0.

* Worker 0 is usnetd's own process (`ShardedDomain`): the one control plane (sessions, the port
  namespace, limits and port rules, leases), the loopback netif, queue 0 of every TAP and packet netif with
  the flows whose port p has p mod N == 0, worker 0's connectors, and every neighbour it learns.
* Worker k (1 <= k < N) is a child forked at start (`start_workers`, `WorkerDomain`): an ordinary
  Domain on queue k of every TAP and packet netif, serving the flows whose port has p mod N == k. It takes
  no client itself: its only peer is usnetd.

A client opens a flow as ever, from usnetd. For a port of worker k, usnetd reserves the port in
its namespace, checks the port rules and charges the limits, then opens the flow in worker k on
a session of its own for that client (a SEQPACKET pair whose far end it passes to the worker with
SCM_RIGHTS), and hands the client the worker's descriptors under a channel id of its own. From
then on the data path (rings, doorbells, the TAP queue) is the worker's alone: rings stay single
producer, single consumer, and nothing of the flow crosses a process. Kick, Resize, CloseChannel
and FlushQueue on that channel are relayed.

A relayed request does not hold usnetd's loop: it is sent without waiting (`Relay.send`),
its client's session parked (its later requests stay unread in its socket, so none overtakes
the answer; only its end is heard), and the worker's reply, read in the loop like any event
(`Relay.hear`), is checked and made the client's answer (`Relay.answer`). Meanwhile the loop serves
everyone else. When the client's session ends, usnetd half-closes its
sessions in the workers, which end theirs as OWNER_GONE: the flows are defuncted and their TCP
peers reset, as on one core. Their ports (flows' and connector blocks') stay reserved in usnetd's
namespace, "draining", till the worker closes its end, which it does once it has let them go
(`Drains.drained`); a request for one meanwhile waits, its session parked, and is served then
(`Drains.defer`), so no client is given a port a worker still holds. A worker that dies or hangs frees
them with its death; one that has not closed its end DRAIN_LIMIT s on is judged as one that
leaves a request unanswered (`Drains.check`). `usnet status` shows each worker's drains.

Neighbours: ARP and neighbour discovery arrive on queue 0, so usnetd tells every worker each
neighbour it learns; a worker that asks itself (its own ARP request) is answered through that.

A dead worker (SIGKILL, a crash): usnetd hears it at once (the worker's command socket, which it
never writes, reads EOF in usnetd's loop: no polling, nothing a client controls), kills and reaps
what is left of it, and
* tells every client channel it served: each flow opened on worker k came with a sixth descriptor,
  a socket per (session, worker) whose far end usnetd keeps; it writes why ("usnetd worker 1
  (pid N) died (killed by SIGKILL)") and closes it, and the client's channel, sleeper or stack
  thread hears the hang-up and fails that channel alone (WORKER_GONE, ECONNABORTED for a socket);
* releases what it held for those channels: their port reservations, the limits charged, the
  relayed channel ids and its sessions in the dead worker; the ports bind again;
* starts a new worker k through the spawner (`Spawner`), a small process forked at start before
  anything else was open, which keeps queue 1 .. N-1 of every TAP netif (a closed queue would
  make the kernel move the last queue into its place, and the steering send another worker's
  frames there), and tells it every neighbour usnetd knows. One log line per restart; a worker
  that dies within RESTART_WITHIN seconds of its start RESTART_LIMIT times in a row is left down
  (opens on its ports are refused with the reason; `usnet status` shows it).
On a packet netif too: the replacement finds its queue's ring positions again
(usnet.drivers.packet: `PacketDriver.resume`, called by the spawner's new worker).

A hung worker (alive but silent: SIGSTOP, stuck in a loop, blocked): usnetd asks each worker
every HEARTBEAT s whether its loop turns (b"H" on the command socket, answered b"h", sent and read
without waiting); one that leaves it unanswered HUNG_AFTER s, or a relayed request unanswered
WORKER_TIMEOUT s (START_TIMEOUT for a worker not yet heard from; `Relay.check`), is suspect, and
judged from /proc (usnet.domain.liveness, `Supervisor.suspect`): stopped, asleep with the request unread, or
spinning on its CPU, it is hung; runnable but starved of CPU (a loaded machine), it is given more
time, up to HARD_LIMIT s. A hung worker is killed and replaced as a dead one, its clients told
"usnetd worker k (pid N) hung (...)". An open that found it hung is asked once more of the
replacement; its other waiting requests fail with ENETDOWN and the reason. usnetd's loop never
waits on a worker: `usnet status` too asks each worker without waiting (`StatusGather`), the
answer sent when the last part is read, or at WORKER_TIMEOUT with a silent worker "not answering".

A paced netif (`link_rate`) is one link for all workers: their queues' schedulers share it through
a page usnetd maps before the fork (usnet.domain.netif.linkshare). A low-latency lease on a flow of
worker k is admitted by usnetd's one agent and applied in worker k (`ApplyLease`, `EndLease`: the
worker posts the events, usnetd keeps the lease's time).

Connectors (a process's outgoing connections on one channel, usnet.domain.switch.binding): one
per worker. A client opens worker 0's (here) and learns N from its FlowOpened, then worker k's
(`OpenFlow.worker`, relayed as any flow). usnetd alone chooses and charges their ports, worker
k's from its share (p mod N == k, so the server's answers reach queue k), and relays each block
to worker k as an explicit list (`AddPorts.ports`, which only usnetd's sessions in a worker may
send; a client's is EPERM); the worker holds them in its port space and binds each by its SYN.
ReturnPorts and ReleasePorts are relayed (`WorkerChannels`); a dead worker's blocks are released
here with its channels (`WorkerChannels.drop_worker`).

Multicast (usnet.domain.switch.multicast): a group datagram to port p comes to queue p mod N, as
any, so worker k's flows join their groups there (JoinGroup is relayed) and it delivers to them;
but the link must hear one host, and queries come to queue 0. So a worker says no IGMP or MLD
(`speaks` False); usnetd counts each membership a worker's answer confirms (`Proxied.groups`,
`join_remote`) and reports and answers queries for the union: a group's first join and last
leave over all workers are said once, a query answered once. A membership ends here with its
channel (closed, its session ended, its worker dead).

Fragments come to queue 0 (only the first names ports), and so does IPv6 with an extension header
before UDP: usnetd puts a datagram back together, finds its port and, if it is worker k's, hands
the whole frame to worker k on its command socket (b"F", `_hand_over`), which takes it as if it
came whole (`rx_whole`): unicast or to a group, whose members all hold its port, so all are
worker k's. ICMP and ICMPv6 errors have no port of their own and come to queue 0 too: one quoting
a packet from a port of worker k is handed over the same way (usnet.domain.switch.host
`_icmp_error`), and worker k's switch matches the quote against its flow. What is handed over
is the link's to choose, so it may take at most HAND_OVER_ROOM of the command socket (the bytes
sent and not yet read, SIOCOUTQ); past it a frame is dropped and counted: a flood of them never
takes the room of usnetd's own commands (the heartbeat's question, a client's new session there,
a neighbour), which would make worker k's clients' requests fail with EAGAIN and a lost
heartbeat make worker k look hung.

A group datagram a flow sends with IP_MULTICAST_LOOP is for the members of its port, all of
them the port's worker's: the sender's switch delivers it (usnet.domain.switch.local) if the
port is its own, and otherwise hands it over (b"L", looped): worker k to usnetd (`_loop_out`;
only usnetd knows which worker holds a group), usnetd to its own members or on to the port's
worker (`_hand_over`), each bounded by the same room and counted the same way. A flow's datagram
or TCP segment to the netif's own address goes the same way when its port is another worker's,
and so does the host's answer to one (a RST, or a port unreachable: an ICMP error from our own
address, handed to the quoted port's worker), as two sockets of one Linux host talk through its
address whatever CPU each runs on.

The host's groups: a worker's table holds only its own flows' memberships, but Linux's host is in
a group any socket joined, and its IP_MULTICAST_ALL listeners (the default) hear it on their
port, from the wire or looped. usnetd's table is the union, so each first join and last leave
there (`membership_changed`) is told to every worker (b"G", `WorkerLink.tell_groups`), and a new or
replaced worker gets the whole list at its start (`_tell_groups`); the worker keeps them
(`host_group`), takes datagrams to them for its listeners, and loops to another worker's port
only what the host holds. A b"G" or b"M" may fill the command socket only up to TOLD_SHARE (the
clients make them: `send_within`); one past it marks the worker `groups_stale`: nothing more is
told it until the whole list goes again with the next heartbeat. The host's union of a group's source filters
(RFC 3376 §3.2) follows its b"G" whenever it changes (b"M", `filter_msg`: `host_filter_changed`),
and after the whole list; a worker judges a group datagram's source by it (`host_states`), as
Linux's device filter, not by its own flows' part of it.

Not yet (see the design notes): a wildcard listener's loopback half is not made for a port of
another worker.

The modules, one job each: `sharded` (worker 0 and the control plane: `ShardedDomain`, which
composes the next five), `relay` (usnetd's sessions in the workers, the requests sent on them and
their deadlines, the answers: `Relay`), `supervisor` (heartbeats, a hung or dead worker judged and
replaced: `Supervisor`), `drains` (a departed client's ports held till its worker lets them go, and
the requests that wait for them: `Drains`), `channels` (the client channels a worker serves: opens,
connectors' ports, leases, groups, their release: `WorkerChannels`), `status` (`usnet status`
gathered from every worker: `StatusGather`), `worker` (worker k: `WorkerDomain`), `link` (usnetd's
end of one worker: `WorkerLink`), `spawner` (forking the workers at start and their replacements:
`start_workers`, `Spawner`), `messages` (the command socket's byte layouts, docs/abi.md), `gate`
(the room on a command socket for what clients and the link make: `send_within`), `relayed` (the
records of relayed requests), `bounds` (the time bounds), `steering` (which worker serves a port:
`worker_of`). This module holds only the design.
"""
