#!/usr/bin/perl
# A second, independent MIME parser for tests/test_mail_clients.py: Perl's Email::MIME (Debian's
# libemail-mime-perl), not Python's email package. Reads the .eml files named on the command line and
# prints one JSON object per file: its headers as Email::MIME decodes them (RFC 2047 words included)
# and every leaf part's content type and decoded body text.
use strict;
use warnings;
use Email::MIME;
use JSON::PP;
use Encode qw(decode);

my $json = JSON::PP->new->canonical->utf8;
for my $path (@ARGV) {
    open(my $fh, '<:raw', $path) or die "cannot read $path: $!";
    my $raw = do { local $/; <$fh> };
    close $fh;
    my $mail = Email::MIME->new($raw);
    my %headers;
    for my $name (qw(From To Subject Date Message-ID MIME-Version List-Id List-Unsubscribe X-Engine-Message-Key)) {
        my $value = $mail->header_str($name);
        $headers{$name} = $value if defined $value;
    }
    my @parts;
    $mail->walk_parts(sub {
        my ($part) = @_;
        return if $part->subparts;
        my ($type) = split /;/, ($part->content_type // 'text/plain');
        push @parts, { type => lc $type, body => $part->body_str };
    });
    print $json->encode({ file => $path, headers => \%headers, parts => \@parts }), "\n";
}
