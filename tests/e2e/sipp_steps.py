"""Extra steps for the sipp caller scenario: DTMF, and re-INVITEs for hold, resume and codec change."""

from __future__ import annotations

REINVITE = """
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} INVITE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 {version} IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP {pt} 101
      a=rtpmap:{pt} {codec}/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a={direction}

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""


def reinvite(cseq: int, direction: str = "sendrecv", pt: int = 0) -> str:
    codec = "PCMU" if pt == 0 else "PCMA"
    return REINVITE.format(cseq=cseq, version=cseq + 1, direction=direction, pt=pt, codec=codec)


def dtmf(digits: str, pause_ms: int = 1500) -> str:
    """RFC 4733 digits, sent by sipp as telephone-event RTP packets."""
    return (
        f'  <nop><action><exec play_dtmf="{digits}"/></action></nop>\n  <pause milliseconds="{pause_ms}"/>\n'
    )


def pause(ms: int) -> str:
    return f'  <pause milliseconds="{ms}"/>\n'


def stream(audio: str, pt: int) -> str:
    return f'  <nop><action><exec rtp_stream="{audio},1,{pt}"/></action></nop>\n'
